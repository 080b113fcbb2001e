"""Everything specific to distribution, applied from outside the model and the tasks: our DeepSpeed
strategy and its CPU variant (`strategy`: swapped saves, checked and universal loads, CPU Adam under
optimizer offload, ZeRO-3 external parameters), the gradient norm under any strategy (`grad_norm`),
ZeRO checkpoint directories and their consolidation (`zero`), resharding to another world size
(`reshard`), and the memory plan that picks a strategy that fits (`planning`)."""
