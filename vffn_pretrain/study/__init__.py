"""The paper's continued-pretraining comparison (Tables 1 and 3) as a seeded, resumable study.

``vffn-study run conf/study/table1_cpu.yaml --out DIR`` trains, per seed, a dense base and then continues it
with each FFN variant; ``vffn-study report DIR`` writes the Markdown report and plots. Modules, one concern
each:

* :mod:`.config`  reading and checking a study file (conf/study/*.yaml), the ``--quick`` form;
* :mod:`.plan`    the runs of a study: names, run directories, trainer overrides, dependencies;
* :mod:`.runner`  executing a plan as trainer subprocesses, a few at a time, skipping finished runs;
* :mod:`.stats`   means, t-intervals and paired t-tests over seeds;
* :mod:`.collect` reading the finished runs (summary.json, metrics.jsonl) into per-variant records;
* :mod:`.report`  the Markdown report, the statements about the paper's orderings, and the plots.
"""
