"""`amlft bench`: latency and throughput of a deployed chat endpoint, with shareable reports.

    targets   which endpoints (a run's, a URL, or a file listing several)
    workload  which prompts (a fixed file, or a seeded sample of a prepared split)
    client    one timed request, streaming-aware, errors classified by kind
    runner    warmup, concurrency levels, request/duration bounds
    metrics   percentiles and throughput from the raw timings
    report    report.md, results.csv, results.json and PNG charts

Only `matplotlib` (charts) and `transformers` (--tokenizer) are heavy; both are imported
inside the functions that need them.
"""
