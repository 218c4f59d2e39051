"""`squadft report`: one self-contained HTML page about one or more run directories (or a sweep).

- runs.py     a run directory (metrics.jsonl, eval_results.json, predictions and n-best lists,
              the dev data) read into a `Run`, with its threshold curve and F1 breakdowns;
- tables.py   the threshold trade-off table (`--thresholds`), the worst errors;
- figures.py  the matplotlib (Agg) figures, as PNG data URIs;
- sweeps.py   a sweep directory: its trials ranked by held-out F1, its done trials as runs;
- page.py     the HTML page and `write_report`, the command's entry point.
"""
