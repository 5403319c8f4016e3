"""The measuring tools: ``xpnet bench`` (``bench``), ``xpnet report`` (``report``), the launch
counter (``launches``), the memory model and probe (``memory``), data-parallel scaling
(``scaling``) and the reader of the machine (``machine``)."""
