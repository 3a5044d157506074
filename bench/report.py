"""From measurements to results: per server and connection count the median
and spread over rounds, the ratios of round-mates, and a markdown table."""

from statistics import median

RATIOS = (("service", "article"), ("service", "ceiling"), ("service", "mlflow"))


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
    plan = results["plan"]
    lines = [
        f"## HTTP benchmark: `POST {results['path']}`",
        "",
        f"{plan['rounds']} round(s) of {plan['seconds']} s per load, `wrk -t{plan['wrk_threads']}`, "
        f"{results['machine']['cpus']} CPUs (load average {results['machine']['load_average_at_start']:.2f} "
        f"at start); model {results['model_version']}. Figures: median (min–max) over rounds.",
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
    return "\n".join(lines) + "\n"


def _answer(answer: dict | None) -> str:
    if not answer:
        return "none"
    body = answer["body"]
    value = body.get("prediction", body.get("predictions")) if isinstance(body, dict) else body
    return f"{value:.6f}" if isinstance(value, float) else str(value)
