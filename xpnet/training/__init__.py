"""Training: the run's recipe (``config``), the runners ``fit`` drives (``runner``), the loop
itself (``loop``), the run folder (``rundir``) and the figures (``plots``)."""
