"""Server strategies: one algorithm per file, each naming its device behaviour (``clients/``).

The core reaches them through ``fl_sim.plugins.STRATEGIES`` (name -> ``module:Class``), importing one
when it is first used, so names can be checked without importing torch or Flower.
"""
