"""Comparisons under one protocol: the plan runner, its protocols, the report and its tables.

- :mod:`~llm_st.bench.plan` and :mod:`~llm_st.bench.runner`: ``llm-st bench PLAN``, every
  comparison (methods x datasets x protocols x seeds), each cell an engine run directory,
  one results table; :mod:`~llm_st.bench.protocols`: shift, imputation, anomaly;
- :mod:`~llm_st.bench.ablation`: Tan et al.'s backbone ablations of an adapter on a task
  in memory (the demo's; plans name them as methods with a ``backbone_mode``);
- :mod:`~llm_st.bench.recipes`: where the standard recipes are;
- :mod:`~llm_st.bench.published`: the published figures printed beside ours;
- :mod:`~llm_st.bench.decoding`: zero-shot decoding throughput, the batched constrained
  forecaster beside an LLMTime-style loop (:func:`~llm_st.bench.decoding.zero_shot_throughput`);
- :mod:`~llm_st.bench.throughput`: training samples/s of the engine beside a plain PyTorch
  loop (:func:`~llm_st.bench.throughput.engine_vs_plain`);
- :mod:`~llm_st.bench.memory`: peak memory and step time of each backbone policy with and
  without gradient checkpointing at 2 and 4 blocks, projected to 32
  (:func:`~llm_st.bench.memory.memory_table`);
- :mod:`~llm_st.bench.report`: every table llm-st prints;
- :mod:`~llm_st.bench.document`: a benchmark folder's report.md / report.html
  (:func:`~llm_st.bench.document.write_report`), with the figures of
  :mod:`~llm_st.bench.plots`;
- :mod:`~llm_st.bench.machine`: what the machine is and the fastest torch thread count on
  a shared machine.
"""
