"""fedcustom's performance harness: `python -m benchmarks overhead|scale|throughput|peer|all [--quick]`,
and the GPU check `python -m benchmarks gpu [--dry-run]` (benchmarks/gpu.sh).

Each benchmark writes benchmarks/results/NAME.json (machine info, settings, raw numbers, ratios)
and prints its ratios. Speed claims live here, never in timed tests.
"""
