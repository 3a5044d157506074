"""From measurements to results: per server and connection count the median
and spread over rounds, the ratios of round-mates, the service's batches, the
project's targets, and markdown tables."""

from statistics import median

RATIOS = (("service", "article"), ("service", "ceiling"), ("service", "mlflow"))
# The single-row targets are set at this many connections, the batch one at this many rows.
TARGET_CONNECTIONS = "16"
TARGET_BATCH_ROWS = "10000"


def spread(values) -> dict:
    values = list(values)
    return {"median": median(values), "min": min(values), "max": max(values)}


def _median_run(runs: list) -> dict:
    """The run whose total memory is the median (the lower one of an even count)."""
    ordered = sorted(runs, key=lambda run: run["pss_mib"]["total"])
    return ordered[(len(ordered) - 1) // 2]


def summarize(runs: list) -> dict:
    """Runs of one server at one connection count, over the rounds."""
    typical_memory = _median_run(runs)["pss_mib"]
    summary = {
        "rounds": len(runs),
        "requests_per_second": spread(run["requests_per_second"] for run in runs),
        "p50_ms": spread(run["p50_ms"] for run in runs),
        "p99_ms": spread(run["p99_ms"] for run in runs),
        "errors": sum(sum(run["errors"].values()) for run in runs),
        "cpu_ms_per_request": spread(run["cpu_ms_per_request"] for run in runs),
        "pss_mib": {"total": median(run["pss_mib"]["total"] for run in runs),
                    "master": typical_memory["master"], "workers": typical_memory["workers"]},
    }
    if all("supervisor_cpu_ms_per_request" in run for run in runs):
        summary["supervisor_cpu_ms_per_request"] = median(run["supervisor_cpu_ms_per_request"] for run in runs)
    return summary


def summarize_batches(runs: list) -> dict:
    """The service's batch loads by rows per request, over the rounds; the
    stages are the medians of each round's medians."""
    by_rows = {}
    for rows in sorted({run["rows"] for run in runs}):
        of_size = [run for run in runs if run["rows"] == rows]
        stages = dict.fromkeys(stage for run in of_size for stage in run["server_ms"])
        by_rows[str(rows)] = {
            **summarize(of_size),
            "rows_per_second": spread(run["rows_per_second"] for run in of_size),
            "server_ms": {stage: median(run["server_ms"][stage] for run in of_size if stage in run["server_ms"])
                          for stage in stages},
            "client_ms": median(run["client_ms"] for run in of_size),
        }
    return by_rows


def _target(target: str, measured: float, shown: str, met: bool) -> dict:
    return {"target": target, "measured": measured, "shown": shown, "met": bool(met)}


def targets(results: dict) -> dict:
    """The project's targets, each with what this run measured and whether it
    was met. A missed target is reported, never an error."""
    service = results["servers"]["service"]
    single_row = service["by_connections"][TARGET_CONNECTIONS]
    at = f"{TARGET_CONNECTIONS} connections"
    vs_article = results["ratios"]["service/article"][TARGET_CONNECTIONS]["median"]
    vs_ceiling = results["ratios"]["service/ceiling"][TARGET_CONNECTIONS]["median"]
    p99 = single_row["p99_ms"]["median"]
    errors = sum(summary["errors"] for summary in service["by_connections"].values())
    batch_rows_per_second = results["batch"]["by_rows"][TARGET_BATCH_ROWS]["rows_per_second"]["median"]
    predict_us = results["in_process"]["microseconds"]["bundle"]["median"]
    difference = results["in_process"]["max_difference_to_xgboost"]
    make_serve = results["make"]["serve_unchanged_seconds"]["median"]
    training = results["make"]["train"]["seconds"]
    # After every load of the service, single rows and batches alike.
    largest_worker = max(size for run in service["runs"] + results["batch"]["runs"]
                         for size in run["pss_mib"]["workers"])
    return {
        "single_row_vs_article": _target(
            f"single row: service ≥ 5× the article's requests/s ({at}, median of per-round ratios)",
            vs_article, f"{vs_article:.2f}×", vs_article >= 5),
        "single_row_vs_ceiling": _target(
            f"single row: service ≥ 0.75× the ceiling's requests/s ({at}, median of per-round ratios)",
            vs_ceiling, f"{vs_ceiling:.2f}×", vs_ceiling >= 0.75),
        "single_row_p99": _target(f"single row: p99 ≤ 30 ms at {at} (median over rounds)",
                                  p99, f"{p99:.1f} ms", p99 <= 30),
        "single_row_errors": _target("single row: 0 errors (every load of the service)",
                                     errors, str(errors), errors == 0),
        "batch_rows_per_second": _target(
            f"{int(TARGET_BATCH_ROWS):,} rows in one request: ≥ 400,000 rows/s end to end",
            batch_rows_per_second, f"{batch_rows_per_second:,.0f} rows/s", batch_rows_per_second >= 400_000),
        "in_process_predict": _target("one row in process: `bundle.predict_proba` ≤ 50 µs",
                                      predict_us, f"{predict_us:.1f} µs", predict_us <= 50),
        "in_process_difference": _target(
            f"in process: largest difference to XGBoost ≤ 1e-6 over all "
            f"{results['in_process']['rows_compared']} rows", difference, f"{difference:.1e}", difference <= 1e-6),
        "make_serve_unchanged": _target("`make serve` with nothing changed ≤ 2 s",
                                        make_serve, f"{make_serve:.2f} s", make_serve <= 2),
        "training": _target("training through papermill (`make train`) ≤ 10 s",
                            training, f"{training:.1f} s", training <= 10),
        "worker_memory": _target("memory ≤ 150 MiB PSS per worker (largest worker after any load)",
                                 largest_worker, f"{largest_worker:.0f} MiB", largest_worker <= 150),
    }


def ratios(runs: list, connection_counts) -> dict:
    """requests/s of one server over another's, each round against the same
    round (the same machine noise), then the median of those ratios."""
    throughput = {(run["server"], run["round"], run["connections"]): run["requests_per_second"] for run in runs}
    result = {}
    for numerator, denominator in RATIOS:
        per_count = {}
        for connections in connection_counts:
            per_round = [throughput[numerator, round_, connections] / throughput[denominator, round_, connections]
                         for (server, round_, count) in throughput
                         if server == denominator and count == connections
                         and (numerator, round_, connections) in throughput]
            if per_round:
                per_count[str(connections)] = {"median": median(per_round), "per_round": per_round}
        if per_count:
            result[f"{numerator}/{denominator}"] = per_count
    return result


def _with_spread(figures: dict, digits: int) -> str:
    middle, low, high = (f"{figures[name]:,.{digits}f}" for name in ("median", "min", "max"))
    return middle if low == high else f"{middle} ({low}–{high})"


def _memory(pss: dict) -> str:
    parts = ([f"{pss['master']:.0f}"] if pss["master"] is not None else []) + [f"{size:.0f}" for size in pss["workers"]]
    return f"{pss['total']:.0f}" + (f" ({' + '.join(parts)})" if len(parts) > 1 else "")


def _cpu(summary: dict) -> str:
    text = f"{summary['cpu_ms_per_request']['median']:.2f}"
    if "supervisor_cpu_ms_per_request" in summary:
        text += f" (+{summary['supervisor_cpu_ms_per_request']:.2f} PM2)"
    return text


def markdown(results: dict) -> str:
    plan, model = results["plan"], results["model"]
    lines = [
        f"## HTTP benchmark: `POST {results['path']}`",
        "",
        f"{plan['rounds']} round(s) of {plan['seconds']} s per load, `wrk -t{plan['wrk_threads']}`, "
        f"{results['machine']['cpus']} CPUs (load average {results['machine']['load_average_at_start']:.2f} "
        f"at start); model {results['model_version']} ({model['trees']} trees, max depth {model['max_depth']}, "
        f"{model['leaves']} leaves). Figures: median (min–max) over rounds.",
        "",
        "| server | connections | requests/s | p50 ms | p99 ms | errors | CPU ms/request | "
        "PSS MiB: total (master + workers) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, server in results["servers"].items():
        for connections, summary in server["by_connections"].items():
            lines.append(
                f"| {server['label']} | {connections} | {_with_spread(summary['requests_per_second'], 0)} | "
                f"{_with_spread(summary['p50_ms'], 1)} | {_with_spread(summary['p99_ms'], 1)} | "
                f"{summary['errors']} | {_cpu(summary)} | {_memory(summary['pss_mib'])} |")
    if results["ratios"]:
        counts = list(next(iter(results["servers"].values()))["by_connections"])
        lines += ["", "| requests/s ratio (median of per-round ratios) | "
                  + " | ".join(f"{count} connections" for count in counts) + " |",
                  "| --- |" + " ---: |" * len(counts)]
        for name, per_count in results["ratios"].items():
            cells = [f"{per_count[count]['median']:.2f}×" if count in per_count else "–" for count in counts]
            lines.append(f"| {name.replace('/', ' / ')} | " + " | ".join(cells) + " |")
    answers = ", ".join(f"{key} {_answer(server['answer'])}" for key, server in results["servers"].items())
    lines += ["", f"Answers to the benchmark's request: {answers}."]
    if results["skipped"]:
        lines.append("Skipped: " + "; ".join(results["skipped"]) + ".")
    lines += _batch_lines(results) + _in_process_lines(results) + _make_lines(results) + _target_lines(results)
    return "\n".join(lines) + "\n"


def _batch_lines(results: dict) -> list[str]:
    batch, plan = results["batch"], results["plan"]
    first = next(iter(batch["by_rows"].values()))
    stages = list(first["server_ms"])
    lines = [
        "", f"### Batches: `POST {batch['path']}` with `{{\"instances\": [...]}}`, this service",
        "",
        f"`wrk` at {batch['connections']} connections (one per worker) for {plan['batch_seconds']} s per size. "
        f"Stages: the `Server-Timing` header's median over the {batch['timed_requests']} requests sent one "
        "at a time after each load; client: the same requests' time as urllib saw it (a new connection each).",
        "",
        "| rows per request | requests/s | rows/s | p50 ms | p99 ms | errors | "
        + " | ".join(f"{stage} ms" for stage in stages) + " | client ms | CPU ms/request | PSS MiB |",
        "| ---: |" + " ---: |" * (8 + len(stages)),
    ]
    for rows, summary in batch["by_rows"].items():
        lines.append(
            f"| {int(rows):,} | {_with_spread(summary['requests_per_second'], 0)} | "
            f"{_with_spread(summary['rows_per_second'], 0)} | {_with_spread(summary['p50_ms'], 1)} | "
            f"{_with_spread(summary['p99_ms'], 1)} | {summary['errors']} | "
            + " | ".join(f"{summary['server_ms'].get(stage, float('nan')):.3f}" for stage in stages)
            + f" | {summary['client_ms']:.2f} | {_cpu(summary)} | {_memory(summary['pss_mib'])} |")
    return lines


_IN_PROCESS_PATHS = {
    "bundle": "this project: `bundle.predict_proba` (Treelite up to 32 rows)",
    "xgboost": "XGBoost: `booster.inplace_predict(to_model_input(row))`",
    "article": "the article: split the string, one-row DataFrame, `XGBClassifier.predict_proba`",
}


def _in_process_lines(results: dict) -> list[str]:
    in_process = results["in_process"]
    lines = ["", f"### One row in process: `{in_process['row']}`", "",
             "Each call timed on its own; median over the calls of each repeat, then median (min–max) "
             "of the repeats.", "",
             "| path | µs per call | calls |", "| --- | ---: | ---: |"]
    for key, label in _IN_PROCESS_PATHS.items():
        figures = in_process["microseconds"][key]
        lines.append(f"| {label} | {_with_spread(figures, 1)} | {figures['calls']:,} |")
    lines += ["", f"Largest difference between `bundle.predict_proba`, one row at a time, and XGBoost's "
                  f"`inplace_predict` over all {in_process['rows_compared']} rows of the data set: "
                  f"{in_process['max_difference_to_xgboost']:.1e}."]
    return lines


def _make_lines(results: dict) -> list[str]:
    serve, train = results["make"]["serve_unchanged_seconds"], results["make"]["train"]
    repeats = len(serve["samples"])
    note = "" if serve["nothing_changed"] else "; a source had changed, so the first one redeployed"
    return ["", "### make", "", "| command | seconds |", "| --- | ---: |",
            f"| `make serve` with nothing changed, against the running service "
            f"({'median of ' + str(repeats) if repeats > 1 else 'once'}{note}) | {_with_spread(serve, 2)} |",
            f"| `make train`: papermill, default parameters, a fresh models folder | "
            f"{train['seconds']:.1f} (papermill's run: {train['papermill_seconds']:.1f}) |"]


def _target_lines(results: dict) -> list[str]:
    lines = ["", "### Targets", "", "| target | measured | met |", "| --- | ---: | :---: |"]
    for target in results["targets"].values():
        lines.append(f"| {target['target']} | {target['shown']} | {'yes' if target['met'] else '**no**'} |")
    return lines


def _answer(answer: dict | None) -> str:
    if not answer:
        return "none"
    body = answer["body"]
    value = body.get("prediction", body.get("predictions")) if isinstance(body, dict) else body
    return f"{value:.6f}" if isinstance(value, float) else str(value)
