"""Stage 2's room: the pretraining config, the loop every worker runs, its checkpoints, and the
driver that runs it on Ray Train."""
