"""Campaigns: a grid of scored cells (attack × victim × level × policy setting × seed), each
run through the judge's scored path, stored as it finishes in an SQLite file keyed by the
cell and the code version, so an interrupted campaign resumes where it stopped; local
worker processes or a Dask cluster run the cells; per-cell aggregates over the seeds
(median and range of leaked bits, success k/N with a Wilson interval) make the published
docs (docs/campaigns.md).  Part of the assembly: it holds both sides through tvmm.matrix.
"""
