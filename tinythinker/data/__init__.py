"""Data: raw sources, the learnable world, the teacher, stage records, preference pairs, data set builds and readers."""
