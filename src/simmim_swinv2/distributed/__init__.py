"""Everything specific to distribution, applied from outside the model and the tasks: the DeepSpeed strategy and
its CPU variant (`strategy`), ZeRO checkpoint directories and their consolidation (`zero`), resharding to another
world size (`reshard`), and the memory plan that picks a strategy that fits (`planning`)."""
