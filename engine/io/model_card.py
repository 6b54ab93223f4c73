"""README.md of a saved pruned model: what a person needs to know before pushing the folder to the Hub.

Built from the run record alone (engine/io/record.py): base model, recipe with every spec field, the data and
evaluation protocol, realised sparsity per tier, perplexities, software versions.
"""
from __future__ import annotations

from pathlib import Path

from engine.io.models import EMBEDDED, EMBEDDED_HUB_ID
from engine.patterns.registry import PATTERNS
from engine.spec import PruneSpec

TIER_TITLES = {"dense": "dense (all kept)", "2:4": "2:4 (2 of every 4 kept)", "topk": "top-K (K kept per block)"}


def model_card(record: dict) -> str:
    spec = PruneSpec.from_dict(record["spec"])
    model, data = record["model"], record["data"]
    base = EMBEDDED_HUB_ID if str(model.get("name", "")).startswith(EMBEDDED) else model.get("name")
    hub_base = base if base and "/" in base and not Path(base).expanduser().exists() else None
    lines = ["---", *([f"base_model: {hub_base}"] if hub_base else []), "library_name: transformers",
             "tags:", "- pruned", "- sparse", f"- {spec.method}", f"- {spec.sparsity_type.replace(':', '-')}",
             "---", "", f"# {Path(str(base)).name} pruned: {spec.label()}", "",
             f"Zeros are stored as zeros in dense tensors: the files are as large as the base model's, and "
             f"speed-ups need a sparse kernel for the pattern. Pruned with the LLM sparsity explorer (engine "
             f"{record['versions'].get('engine')}), run `{record['run_id']}`.", "",
             "## Base model", "",
             f"- name: `{model.get('name')}`" + (f" (the hub's `{base}`)" if base != model.get("name") else ""),
             f"- loaded from: `{model.get('source')}`",
             f"- family: {model.get('model_type')}, {model.get('n_layers')} decoder layers, "
             f"pruned in {model.get('dtype')} on {model.get('compute_device') or model.get('device')}", "",
             "## Recipe", "", f"{spec.label()}.", ""]
    notes = PATTERNS[spec.pattern].notes(spec)  # where the pattern's rule comes from, if it says
    if notes:
        lines += [notes, ""]
    lines += ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in record["spec"].items()]
    request = record.get("request") or {}
    lines += [f"| calibration data | {data.get('calibration') or 'none (no calibration needed)'} |",
              f"| evaluation data | {data.get('evaluation') or 'none'} |"]
    lines += [f"| {k} | `{v}` |" for k, v in request.items() if k not in ("calib", "eval")]
    lines += ["", "## Realised sparsity", "",
              f"{record['sparsity']:.4f} of the weights of the pruned matrices are zero (nominal "
              f"{record['nominal_sparsity']:.4f}); embeddings, norms and the output head are dense.", ""]
    lines += _tier_table(record["matrices"])
    lines += ["## Perplexity", ""]
    lines += _perplexity(record)
    versions = record["versions"]
    lines += ["## Software", "", *[f"- {k}: {v}" for k, v in versions.items()], ""]
    return "\n".join(lines)


def _tier_table(matrices: list[dict]) -> list[str]:
    totals = {}
    for m in matrices:
        for tier, counts in (m.get("tier_weights") or {}).items():
            t = totals.setdefault(tier, {"blocks": 0, "numel": 0, "zeros": 0})
            t["blocks"] += m["tiers"][tier]
            t["numel"] += counts["numel"]
            t["zeros"] += counts["zeros"]
    if not totals:
        return []
    lines = ["| tier | blocks | weights | pruned | sparsity |", "|---|---|---|---|---|"]
    for tier, t in totals.items():
        if t["numel"]:
            lines.append(f"| {TIER_TITLES[tier]} | {t['blocks']} | {t['numel']} | {t['zeros']} | "
                         f"{t['zeros'] / t['numel']:.4f} |")
    return lines + [""]


def _perplexity(record: dict) -> list[str]:
    ppl, ev = record["ppl"], record.get("eval")
    if ppl.get("pruned") is None or not ev:
        return ["Not evaluated in this run.", ""]
    spec = record["spec"]
    calib = record["data"].get("calibration")
    lines = ["| model | perplexity |", "|---|---|", f"| pruned | {ppl['pruned']:.3f} |"]
    lines += [f"| {k} (same protocol) | {ppl[k]:.3f} |" for k in ("dense", "magnitude") if ppl.get(k) is not None]
    lines += ["", f"Protocol: {record['data'].get('evaluation')}, {ev['windows']} windows x {ev['seqlen']} tokens "
              f"({ev['tokens']} tokens), perplexity = exp(mean window loss) as Wanda's eval_ppl computes it. "
              + (f"Calibration: {spec['nsamples']} windows x {spec['seqlen']} tokens of {calib}, seed {spec['seed']}."
                 if calib else "No calibration data."), ""]
    return lines
