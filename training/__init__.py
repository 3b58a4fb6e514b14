"""FS-SAM2 LoRA meta-training, evaluation and adapter merging (peft). Not implemented yet: see the open issues."""
