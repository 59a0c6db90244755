"""inspectnet's benchmarks: each module measures one claim and writes ``benchmarks/results/NAME.{json,md}``
with the machine it ran on (:mod:`benchmarks.harness`). Run one from the repository root with
``python -m benchmarks NAME [options]``; ``python -m benchmarks`` lists them."""
