"""Cost benchmarks: speed, memory, parameters and FLOPs per trainer (tables + JSON)."""
