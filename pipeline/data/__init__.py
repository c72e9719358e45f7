"""Stage 1's room: corpus -> normalised documents -> tokenizer -> packed, checksummed token shards,
and the dataset reader that training uses."""
