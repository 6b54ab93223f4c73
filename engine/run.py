"""One pruning run end to end, as the CLI and the dashboard both start it:
load (or reuse) the model -> baselines (cached) -> calibration windows -> layer walk -> perplexity -> save.

`run(request)` returns the run record (engine/io/record.py). Bad input raises a UserError before any work;
a Stop returns a record with status "cancelled"; after any failure the cached model is restored to its
dense weights, so the next run never starts from a half-pruned model.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import Cancelled, UserError
from engine.eval.perplexity import perplexity
from engine.eval.zeroshot import evaluate_zero_shot, resolve_tasks
from engine.io import text as textdata
from engine.io.baselines import BaselineCache, baseline_key, model_fingerprint
from engine.io.compact import measured_storage, save_compact
from engine.io.model_card import model_card
from engine.io.models import LoadedModel, check_model_source, load_model
from engine.io.record import RunRecord, new_run_id, versions, write_json_atomic
from engine.io.save import SAVE_FORMATS, check_save_dir, save_pretrained_atomic
from engine.io.snapshot import DenseWeights, snapshot_budget_bytes
from engine.recover.masked_finetune import FinetuneSpec
from engine.recover.pipeline import recover
from engine.spec import PruneSpec
from engine.walk.discovery import find_decoder_layers
from engine.walk.layer_walk import prune_model


@dataclass
class RunRequest:
    model: str | None = None            # hub id, local dir, .gguf path; None = the embedded SmolLM2
    spec: PruneSpec = field(default_factory=PruneSpec)
    calib: str = "auto"                 # auto | wikitext2 | c4 | pydoc | a local path
    eval: str | None = "auto"           # same, or None for no evaluation
    eval_windows: int | None = None     # None = every window of the evaluation text (the paper)
    baselines: bool = True              # dense and magnitude (same pattern) perplexity, cached on disk
    device: str = "auto"
    dtype: str = "auto"
    save_dir: str | None = None         # results.json (+ the model unless save_model is False)
    save_model: bool = True
    save_model_dir: str | None = None   # put the model here instead of save_dir
    save_format: str = "dense"          # a SAVE_FORMATS name (engine/io/compact.py): dense, or compact by pattern
    overwrite: bool = False
    trust_remote_code: bool = False
    safetensors_only: bool = False      # never unpickle weights (.bin): a public server loads safetensors only
    cache_dir: str | None = None
    slow_tokenizer: bool = False        # the model's slow (Python) tokenizer, as the Wanda hybrid fork loads it
    snapshot_max_gb: float | None = None  # dense copy in memory up to this size, else in a file; None = env / 8
    baseline_cache_dir: str | None = None
    store: object | None = None         # a RunStore: the record is written at start, per layer, and at the end
    zero_shot_tasks: list[str] | None = None  # lm-eval tasks after perplexity; None = off, [] = the paper's seven
    zero_shot_limit: int | None = None  # at most N items per task
    zero_shot_include: str | None = None  # a folder of extra lm-eval task YAMLs
    finetune: FinetuneSpec | None = None  # masked fine-tune after pruning (engine/recover/pipeline.py); None = off
    finetune_dir: str | None = None     # the fine-tune's checkpoints; None = a temporary folder

    def validate(self) -> None:
        if self.eval_windows is not None and (not isinstance(self.eval_windows, int) or self.eval_windows < 1):
            raise UserError(f"eval windows must be a whole number >= 1, got {self.eval_windows!r}")
        if self.zero_shot_limit is not None and (not isinstance(self.zero_shot_limit, int) or self.zero_shot_limit < 1):
            raise UserError(f"zero-shot limit must be a whole number >= 1, got {self.zero_shot_limit!r}")
        snapshot_budget_bytes(self.snapshot_max_gb)
        if self.save_format not in SAVE_FORMATS:
            raise UserError(f"save format must be one of {', '.join(SAVE_FORMATS)}, got {str(self.save_format)[:40]!r}")
        if self.finetune is not None:
            self.finetune.validate()
            if self.finetune.lora_rank is not None and not self.finetune.merge:
                raise UserError("a run merges its LoRA adapters under the mask; to keep an adapter separate, "
                                "fine-tune the saved model with finetune.py")
        if self.save_dir:
            check_save_dir(self.save_dir, self.overwrite)
        if self.save_model_dir:
            check_save_dir(self.save_model_dir, self.overwrite)


class ModelCache:
    """Keeps the last loaded model in memory between runs, with its dense weights aside (engine/io/snapshot.py):
    in memory up to the request's snapshot budget, in a file above it. `restore()` always puts the same model
    back to dense in place, whatever its size, so a caller holding it never holds a pruned or dropped model."""

    def __init__(self):
        self._key = None
        self.loaded: LoadedModel | None = None
        self._dense: DenseWeights | None = None
        self.holds_run: str | None = None  # the run whose pruned weights the loaded model holds now, if any

    def get(self, request: RunRequest, progress=None) -> LoadedModel:
        self.holds_run = None  # whatever comes next changes the weights
        key = (request.model, request.device, request.dtype, request.trust_remote_code, request.safetensors_only,
               request.slow_tokenizer)
        budget = snapshot_budget_bytes(request.snapshot_max_gb)
        if self._key == key and self.loaded is not None:
            self.restore()
            if self._dense.in_memory != (self._dense.nbytes <= budget):  # the budget changed: keep it as asked
                self._dense.close()
                self._dense = DenseWeights(self.loaded.model, budget)
            return self.loaded
        # a model that cannot load fails here, before the one in memory is dropped (a stream of bad ids would
        # otherwise make every next run reload it)
        check_model_source(request.model, request.trust_remote_code, request.cache_dir)
        self.drop()
        if progress:
            progress({"stage": "load", "message": f"loading {request.model or 'the embedded SmolLM2-135M-Instruct'}"})
        lm = load_model(request.model, request.device, request.dtype, request.trust_remote_code, request.cache_dir,
                        safetensors_only=request.safetensors_only, slow_tokenizer=request.slow_tokenizer)
        find_decoder_layers(lm.model)  # refuse a model with no layer stack before any work
        dense = DenseWeights(lm.model, budget)  # before any pruning: never prune what cannot be put back
        self.loaded, self._key, self._dense = lm, key, dense
        return lm

    def restore(self) -> None:
        """Put the dense weights back into the loaded model, in place."""
        self.holds_run = None
        if self.loaded is not None and self._dense is not None:
            self._dense.restore()

    def drop(self) -> None:
        if self._dense is not None:
            self._dense.close()
        self.loaded, self._key, self._dense = None, None, None


def run(request: RunRequest, progress=None, cancel: threading.Event | None = None,
        models: ModelCache | None = None) -> dict:
    progress = progress or (lambda event: None)
    cancel = cancel or threading.Event()
    models = models or ModelCache()
    request.validate()
    t_start = time.perf_counter()
    timings: dict = {}
    record = _new_record(request)
    if request.store is not None:
        request.store.save(record)
        progress = _recording(progress, record, request.store)
    try:
        _run(request, record, timings, t_start, progress, cancel, models)
    except Cancelled as e:
        record.update(status="cancelled", message=f"{e}; the in-memory model will be restored to dense weights")
        models.restore()
    except KeyboardInterrupt:
        models.restore()
        record.update(status="cancelled", message="stopped with Ctrl-C; nothing was saved")
        _finish(record, timings, t_start, request)
        raise
    except BaseException as e:
        models.restore()  # never leave a half-pruned model for the next run
        why = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        record.update(status="failed", message=why[:500])
        _finish(record, timings, t_start, request)
        raise
    if record["status"] == "completed":
        models.holds_run = record["run_id"]
    return _finish(record, timings, t_start, request)


def recover_run(record: dict, finetune: FinetuneSpec, models: ModelCache, progress=None,
                cancel: threading.Event | None = None) -> dict:
    """Recover a finished run afterwards: a masked fine-tune of its pruned weights, which `models` must still hold,
    on the run's own calibration text, evaluated on its evaluation text and windows. Returns the record with its
    recovery block (engine/recover/pipeline.py) and the fine-tune's time; the caller stores it."""
    if models.holds_run != record.get("run_id") or models.loaded is None:
        raise UserError("the model in memory no longer holds this run's pruned weights (another run or recovery "
                        "came after it, or the process restarted): run it again, then recover it")
    request = record.get("request") or {}
    lm = models.loaded
    source = textdata.resolve_text(request.get("calib") or "auto", "calibration")
    eval_src = textdata.resolve_text(request["eval"], "evaluation") if request.get("eval") else None
    eval_ids = textdata.evaluation_ids(lm.tokenizer, eval_src) if eval_src is not None else None
    models.holds_run = None  # from here on the weights are no longer the run's pruned ones
    t = time.perf_counter()
    try:
        block = recover(lm.model, lm.tokenizer, finetune, source, eval_ids, record["spec"]["seqlen"],
                        request.get("eval_windows"), ppl_before=(record.get("ppl") or {}).get("pruned"),
                        progress=progress, cancel=cancel)
    except BaseException:
        models.restore()  # half fine-tuned weights are no one's: the next run starts dense
        raise
    return dict(record, recovery=block,
                timings={**(record.get("timings") or {}), "finetune_s": round(time.perf_counter() - t, 3)})


def _run(request: RunRequest, record: dict, timings: dict, t_start: float, progress, cancel, models) -> None:
    """text sources -> model -> evaluation ids, calibration windows -> dense references -> prune -> evaluate,
    recover, save (each step records what it used)."""
    spec = request.spec
    sources = _resolve_sources(request)  # a missing file or an unreachable hub is reported before minutes of loading
    lm = models.get(request, progress)
    timings["load_s"] = time.perf_counter() - t_start
    model, tok = lm.model, lm.tokenizer
    seqlen = _describe_model(record, lm, spec)
    eval_ids = _evaluation_ids(tok, sources["eval"], seqlen, record, progress)
    windows = None
    if sources["calib"] is not None:
        t = time.perf_counter()
        progress({"stage": "calibration", "message": f"sampling {spec.nsamples} windows of {seqlen} tokens"})
        windows = textdata.calibration_windows(tok, sources["calib"], spec.nsamples, seqlen, spec.seed)
        record["data"]["calibration"] = sources["calib"].name
        timings["calibration_data_s"] = time.perf_counter() - t

    if eval_ids is not None and request.baselines:
        t = time.perf_counter()
        record["ppl"]["dense"], record["ppl"]["magnitude"] = _baselines(
            request, lm, models, eval_ids, sources["eval"].name, seqlen, progress, cancel)
        timings["baselines_s"] = time.perf_counter() - t
    if sources["zero_shot"] is not None and request.baselines:  # still dense here; not cached (unlike perplexity)
        record["zero_shot_dense"] = _zero_shot(lm, sources["zero_shot"], request, "dense", timings, progress, cancel)

    torch.manual_seed(spec.seed)
    result = prune_model(model, spec, windows, progress=progress, cancel=cancel,
                         offload_device=lm.compute_device if lm.offload else None)
    timings.update(result.timings)
    record.update(status=result.status, message=result.message, layers_done=result.layers_done,
                  n_layers=result.n_layers, sparsity=result.sparsity, mask_sparsity=result.mask_sparsity,
                  matrices=result.matrices, errors=result.errors)
    record["model"]["n_params_pruned"] = result.numel
    if result.status != "completed":
        record["message"] = (f"{result.message}; layers 0-{result.layers_done - 1} are pruned, the rest dense. "
                             "The in-memory model will be restored to dense weights before the next run.")
        return
    _after_pruning(request, lm, record, timings, sources, eval_ids, seqlen, progress, cancel)


def _resolve_sources(request: RunRequest) -> dict:
    """The run's text sources and zero-shot tasks, resolved (and checked) before the model loads."""
    spec = request.spec
    eval_src = textdata.resolve_text(request.eval, "evaluation") if request.eval else None
    calib_src = textdata.resolve_text(request.calib, "calibration") if spec.uses_calibration else None
    finetune_src = None if request.finetune is None else \
        calib_src or textdata.resolve_text(request.calib, "calibration")
    zero_shot = None if request.zero_shot_tasks is None else \
        resolve_tasks(request.zero_shot_tasks, request.zero_shot_include)
    return {"eval": eval_src, "calib": calib_src, "finetune": finetune_src, "zero_shot": zero_shot}


def _describe_model(record: dict, lm: LoadedModel, spec: PruneSpec) -> int:
    """Record what was loaded; return the window length (checked against the model's context)."""
    model = lm.model
    seqlen = textdata.default_seqlen(model.config, spec.seqlen)
    record["model"] = {"name": lm.name, "source": lm.source, "model_type": model.config.model_type,
                       "n_layers": len(find_decoder_layers(model)[1]), "dtype": lm.dtype, "device": lm.device,
                       "compute_device": lm.compute_device}
    record["spec"]["seqlen"] = seqlen
    context = textdata.model_context(model.config)
    if context is not None and seqlen > context:
        raise UserError(f"seqlen {seqlen} is longer than the model's context of {context} tokens")
    return seqlen


def _evaluation_ids(tok, eval_src, seqlen: int, record: dict, progress):
    if eval_src is None:
        return None
    progress({"stage": "eval", "message": "tokenizing the evaluation text"})
    eval_ids = textdata.evaluation_ids(tok, eval_src)
    record["data"]["evaluation"] = eval_src.name
    if eval_ids.numel() < seqlen:
        raise UserError(f"evaluation text {eval_src.name} has {eval_ids.numel()} tokens, fewer than one window "
                        f"of seqlen={seqlen}; lower seqlen or use a longer text")
    return eval_ids


def _after_pruning(request, lm, record, timings, sources, eval_ids, seqlen, progress, cancel) -> None:
    """Evaluate the pruned model, recover it (a masked fine-tune) if asked, save it, then zero-shot."""
    if eval_ids is not None:
        t = time.perf_counter()
        res = _ppl(lm.model, eval_ids, seqlen, request.eval_windows, "pruned", progress, cancel)
        record["ppl"]["pruned"] = res.ppl
        record["eval"] = {"windows": res.windows, "tokens": res.tokens, "seqlen": seqlen}
        timings["eval_s"] = time.perf_counter() - t
    if request.finetune is not None:
        t = time.perf_counter()
        record["recovery"] = recover(lm.model, lm.tokenizer, request.finetune, sources["finetune"], eval_ids, seqlen,
                                     request.eval_windows, ppl_before=record["ppl"]["pruned"],
                                     output_dir=request.finetune_dir, progress=progress, cancel=cancel)
        timings["finetune_s"] = time.perf_counter() - t
    _save(request, lm, record, timings, progress)  # before zero-shot, which can take hours: a failure there keeps it
    if sources["zero_shot"] is not None:
        record["zero_shot"] = _zero_shot(lm, sources["zero_shot"], request, "pruned", timings, progress, cancel)


def _baselines(request, lm, models, eval_ids, eval_name, seqlen, progress, cancel):
    cache = BaselineCache(request.baseline_cache_dir)
    n_windows = eval_ids.numel() // seqlen
    if request.eval_windows:
        n_windows = min(n_windows, request.eval_windows)
    fingerprint = model_fingerprint(lm.model)
    mag_spec = magnitude_baseline_spec(request.spec)
    out = []
    for what in ("dense", "magnitude"):
        key = baseline_key(lm.source, fingerprint, eval_name, seqlen, n_windows, what,
                           None if what == "dense" else mag_spec.canonical())
        hit = cache.get(key)
        if hit is not None:
            progress({"stage": "baseline", "message": f"{what} perplexity from cache: {hit['ppl']:.2f}"})
            out.append(hit["ppl"])
            continue
        if what == "magnitude":
            progress({"stage": "baseline", "message": "pruning by magnitude for the baseline"})
            prune_model(lm.model, mag_spec, None, cancel=cancel)
        try:
            res = _ppl(lm.model, eval_ids, seqlen, request.eval_windows, what, progress, cancel)
        finally:
            if what == "magnitude":
                models.restore()
        cache.put(key, {"ppl": res.ppl, "windows": res.windows})
        out.append(res.ppl)
    return out


def magnitude_baseline_spec(spec: PruneSpec) -> PruneSpec:
    """The magnitude reference of a run: the same pattern chosen by |W|, masks only (an OBS choice inside blocks
    needs the update: |W| instead)."""
    return spec.replace(method="magnitude", reconstruct=False, group=None, use_variant=False,
                        within_block="score" if spec.within_block == "obs" else spec.within_block)


def _ppl(model, eval_ids, seqlen, max_windows, what, progress, cancel):
    def tick(done, total):
        progress({"stage": "eval", "what": what, "done": done, "total": total})
    progress({"stage": "eval", "message": f"perplexity of the {what} model"})
    return perplexity(model, eval_ids, seqlen, max_windows=max_windows, progress=tick, cancel=cancel)


def _zero_shot(lm, tasks, request, what, timings, progress, cancel) -> dict:
    if cancel.is_set():
        raise Cancelled(f"stopped before the zero-shot evaluation of the {what} model")
    t = time.perf_counter()
    scores = evaluate_zero_shot(lm.model, lm.tokenizer, tasks, limit=request.zero_shot_limit, progress=progress,
                                what=what)
    timings["zero_shot_dense_s" if what == "dense" else "zero_shot_s"] = time.perf_counter() - t
    return scores


def _save(request: RunRequest, lm: LoadedModel, record: dict, timings: dict, progress) -> None:
    target = request.save_model_dir or request.save_dir
    if request.save_model and target:
        progress({"stage": "save", "message": f"saving the pruned model ({request.save_format}) to {target}"})
        card = {"README.md": model_card(record)}  # the card lands with the weights
        t = time.perf_counter()
        if request.save_format == "compact":
            measured = save_compact(lm.model, lm.tokenizer, target, record, overwrite=True, extra_files=card)
            record["storage"] = measured_storage(lm.model, record, measured)
        else:
            save_pretrained_atomic(lm.model, lm.tokenizer, target, overwrite=True, extra_files=card)
        timings["save_s"] = time.perf_counter() - t
        record["saved_model"] = str(Path(target).expanduser().resolve())


def _new_record(request: RunRequest) -> RunRecord:
    return RunRecord.new(
        run_id=new_run_id(), spec=request.spec.to_dict(), model={"name": request.model}, versions=versions(),
        nominal_sparsity=request.spec.nominal_sparsity(),
        request={"calib": request.calib, "eval": request.eval, "eval_windows": request.eval_windows,
                 "baselines": request.baselines, "device": request.device, "dtype": request.dtype,
                 "zero_shot_tasks": request.zero_shot_tasks, "zero_shot_limit": request.zero_shot_limit,
                 "zero_shot_include": request.zero_shot_include,
                 "finetune": request.finetune.to_dict() if request.finetune else None})


def _recording(progress, record: dict, store):
    """Wrap the progress callback: keep the stored record up to date as layers finish (throttled)."""
    def wrapped(event: dict) -> None:
        if event.get("stage") == "prune":
            record.add_layer(event)
            # the last layer always: a run killed later (evaluating, saving) must not read as one layer short
            store.save(record, force=event["layer"] + 1 == event["n_layers"])
        elif event.get("stage") == "save":
            # until the end the run is running (the walk's "completed" is not the run's): a kill reads as
            # "killed while saving the model", with every layer done
            store.save(dict(record, status="running", stage="save"))
        progress(event)
    return wrapped


def _finish(record: dict, timings: dict, t_start: float, request: RunRequest) -> dict:
    timings["total_s"] = time.perf_counter() - t_start
    record["timings"] = {k: round(v, 3) for k, v in timings.items()}
    # the flat names Wanda users look for in results.json
    record.update(actual_sparsity=record["sparsity"], ppl_test=record["ppl"]["pruned"],
                  ppl_dense=record["ppl"]["dense"], ppl_magnitude=record["ppl"]["magnitude"])
    if request.store is not None:  # before results.json and before the caller reports the run
        warning = request.store.save_final(record)
        if warning:
            record["store_warning"] = warning
    if request.save_dir and record["status"] == "completed":  # a stopped or failed run leaves the folder free
        try:
            write_json_atomic(str(Path(request.save_dir).expanduser() / "results.json"), record)
        except OSError as e:
            raise UserError(f"could not write results.json in {request.save_dir}: {e.strerror or e}") from None
    return record
