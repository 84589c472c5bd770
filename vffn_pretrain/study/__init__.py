"""The paper's comparisons (continued pretraining, Tables 1 and 3; from scratch, Table 5) as a seeded,
resumable study.

``vffn-study run conf/study/round2_cpu.yaml --out DIR`` trains, per seed, a dense base, continues it with each
FFN variant, and trains the from-scratch arm; ``vffn-study report DIR`` writes the Markdown report and plots.
Modules, one concern each:

* :mod:`.config`  reading and checking a study file (conf/study/*.yaml), the ``--quick`` form;
* :mod:`.plan`    the runs of a study: names, run directories, trainer overrides, dependencies;
* :mod:`.runner`  executing a plan as trainer subprocesses, a few at a time, skipping finished runs;
* :mod:`.stats`   means, t-intervals and paired t-tests over seeds;
* :mod:`.collect` reading the finished runs (summary.json, metrics.jsonl) into per-run records;
* :mod:`.analysis` every number of the report: per arm and variant, paired differences, claims, gaps;
* :mod:`.plots`   the report's plots;
* :mod:`.report`  report.md (tables and sentences), report.json and the corpus manifest.
"""
