"""Fine-tuning XTTS-v2 on a voice: dataset preparation, training and export."""
