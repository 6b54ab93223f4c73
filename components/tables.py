"""Tidy tables and short texts from run records: the runs of a session, one run's matrices, CSV/JSON export."""
from __future__ import annotations

import html
import json
import os
import tempfile

import pandas as pd

from engine.io.run_store import RUN_ID
from engine.spec import spec_label

RUN_COLUMNS = ["#", "status", "model", "spec", "nominal sparsity", "sparsity", "ppl", "ppl recovered", "ppl dense",
               "ppl magnitude", "time (s)", "calibration", "evaluation", "run id"]


def total_seconds(record: dict) -> float | None:
    t = record.get("timings") or {}
    if "total_s" in t:
        return t["total_s"]
    return sum(v for v in t.values() if isinstance(v, (int, float))) or None


def runs_table(records: list[dict]) -> pd.DataFrame:
    rows = []
    for i, r in enumerate(records, 1):
        ppl = r.get("ppl") or {}
        secs = total_seconds(r)
        rows.append({
            "#": i, "status": r.get("status"), "model": (r.get("model") or {}).get("name"),
            "spec": spec_label(r.get("spec")),
            "nominal sparsity": _pct(r.get("nominal_sparsity")), "sparsity": _pct(r.get("sparsity")),
            "ppl": _num(ppl.get("pruned")), "ppl recovered": _num(recovered_ppl(r)),
            "ppl dense": _num(ppl.get("dense")),
            "ppl magnitude": _num(ppl.get("magnitude")), "time (s)": round(secs, 1) if secs else None,
            "calibration": (r.get("data") or {}).get("calibration"),
            "evaluation": (r.get("data") or {}).get("evaluation"),
            "run id": r.get("run_id")})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


PAST_COLUMNS = ["started (UTC)", "status", "model", "spec", "sparsity", "ppl", "ppl recovered", "ppl dense", "layers",
                "time (s)",
                "run id"]


def recovered_ppl(record: dict) -> float | None:
    """Perplexity after the recovery fine-tune (engine/recover/pipeline.py), when the run had one."""
    return ((record or {}).get("recovery") or {}).get("ppl_after")


def past_runs_table(summaries: list[dict]) -> pd.DataFrame:
    """The run store's runs (components/history.py summaries), newest first, whatever their status."""
    rows = [{"started (UTC)": s["started"], "status": s["status"], "model": s["model"], "spec": s["spec"],
             "sparsity": _pct(s["sparsity"]), "ppl": _num(s["ppl"]), "ppl recovered": _num(s.get("ppl_recovered")),
             "ppl dense": _num(s["ppl_dense"]),
             "layers": s["layers"], "time (s)": round(s["seconds"], 1) if s["seconds"] else None, "run id": s["run_id"]}
            for s in summaries]
    return pd.DataFrame(rows, columns=PAST_COLUMNS)


def matrices_table(record: dict | None) -> pd.DataFrame:
    """One row per pruned matrix: where, shape, counts, and (three-tier) blocks per tier."""
    rows = []
    for m in (record or {}).get("matrices", []):
        tiers = m.get("tiers") or {}
        rows.append({"layer": m["layer"], "module": m["module"], "out": m["shape"][0], "in": m["shape"][1],
                     "numel": m["numel"], "zeros": m["zeros"], "sparsity": round(m["sparsity"], 6),
                     "dense blocks": tiers.get("dense"), "2:4 blocks": tiers.get("2:4"),
                     "top-K blocks": tiers.get("topk")})
    return pd.DataFrame(rows, columns=["layer", "module", "out", "in", "numel", "zeros", "sparsity",
                                       "dense blocks", "2:4 blocks", "top-K blocks"])


def _pct(x):
    return None if x is None else f"{x:.2%}"


def _num(x):
    return None if x is None else round(float(x), 3)


def overview_html(record: dict | None) -> str:
    """The headline numbers of one run as a row of cards, then where they came from."""
    if not record:
        return "<div class='overview empty'>No run yet. Set up a run on the left and press <b>Run</b>.</div>"
    ppl = record.get("ppl") or {}
    model = record.get("model") or {}
    data = record.get("data") or {}
    secs = total_seconds(record)
    vs_dense = f"{ppl['pruned'] / ppl['dense']:.2f}× dense" if ppl.get("pruned") and ppl.get("dense") else "&nbsp;"
    cards = [("realised sparsity", _pct(record.get("sparsity")) or "—",
              f"nominal {_pct(record.get('nominal_sparsity'))}"),
             ("perplexity", _fmt(ppl.get("pruned")), vs_dense),
             ("dense", _fmt(ppl.get("dense")), "baseline"),
             ("magnitude", _fmt(ppl.get("magnitude")), "same pattern, by |W|"),
             ("time", f"{secs:.1f} s" if secs else "—", record.get("status", ""))]
    storage = record.get("storage")
    if storage:
        cards.insert(1, ("compact save (measured)", f"{_mb(storage['bytes'])} MB",
                         f"estimate {_mb(storage['estimate_bytes'])} · dense {_mb(storage['pruned_dense_bytes'])} MB"))
    cells = "".join(f"<div class='card'><div class='k'>{k}</div><div class='v'>{v}</div><div class='s'>{s}</div></div>"
                    for k, v, s in cards)
    label = spec_label(record.get("spec"))
    where = (f"<b>{html.escape(label)}</b> on <code>{html.escape(str(model.get('name')))}</code>"
             + (f" · {html.escape(str(model.get('model_type')))}, {model.get('n_layers')} decoder layers, "
                f"{model.get('dtype')} on {model.get('device')}" if model.get("model_type") else ""))
    facts = (f"calibration: {html.escape(str(data.get('calibration') or '—'))} · "
             f"evaluation: {html.escape(str(data.get('evaluation') or '—'))}"
             + (f" ({record['eval']['windows']} windows of {record['eval']['seqlen']} tokens)"
                if record.get("eval") else "")
             + f" · layers pruned {record.get('layers_done')}/{record.get('n_layers')}"
             + (f" · {model['n_params_pruned']:,} weights in pruned matrices" if model.get("n_params_pruned") else "")
             + (f" · {storage_text(storage)}" if storage else ""))
    return (f"<div class='overview'><div class='what'>{where}</div><div class='cards'>{cells}</div>"
            f"<div class='facts'>{facts}</div></div>")


def storage_text(storage: dict) -> str:
    """The record's measured compact bytes per tier and in total, beside storage_estimate and the dense save."""
    tiers = ", ".join(f"{name} {_mb(n)}" for name, n in storage["per_tier"].items() if n)
    return (f"pruned matrices, measured MB: {tiers}; total {_mb(storage['bytes'])} = "
            f"{storage['ratio']:.1%} of dense {_mb(storage['pruned_dense_bytes'])} (estimate "
            f"{_mb(storage['estimate_bytes'])}, {storage['estimate_gap']:+.2%}); whole save "
            f"{_mb(storage['compact_save_bytes'])} MB vs dense {_mb(storage['dense_save_bytes'])} MB")


def _mb(n) -> str:
    return f"{n / 1e6:,.2f}"


def _fmt(x):
    return "—" if x is None else f"{x:,.3f}"


# -- export ----------------------------------------------------------------------------------------------------

def export_dir() -> str:
    d = os.path.join(tempfile.gettempdir(), "sparsity-dashboard-exports")
    os.makedirs(d, exist_ok=True)
    return d


def file_id(record: dict | None) -> str:
    """The run id for a file name; a record read back from disk could carry anything, so check it."""
    run_id = str((record or {}).get("run_id"))
    return run_id if RUN_ID.fullmatch(run_id) else "unknown"


def write_record_json(record: dict) -> str:
    path = os.path.join(tempfile.mkdtemp(dir=export_dir()), f"run-{file_id(record)}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    return path


def write_tables_csv(records: list[dict], record: dict | None) -> list[str]:
    """runs.csv (every run of the session) and matrices-<run>.csv (the chosen run), ready to download."""
    d = tempfile.mkdtemp(dir=export_dir())  # one folder per export: files keep plain names
    paths = [os.path.join(d, "runs.csv")]
    runs_table(records).to_csv(paths[0], index=False)
    if record:
        mpath = os.path.join(d, f"matrices-{file_id(record)}.csv")
        matrices_table(record).to_csv(mpath, index=False)
        paths.append(mpath)
    return paths
