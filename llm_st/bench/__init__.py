"""Comparisons under one protocol: runners, budgets, seed averages and the report tables.

- :mod:`~llm_st.bench.ablation`: transfer adapters beside Tan et al.'s ablations, on a
  shared budget (:func:`~llm_st.bench.ablation.run_transfer_dataset`);
- :mod:`~llm_st.bench.baselines`: the primitive baselines on their standard recipes,
  every seed a run directory;
- :mod:`~llm_st.bench.seeds`: the one average over seeds both use;
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
