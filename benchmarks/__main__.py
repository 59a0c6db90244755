"""``python -m benchmarks NAME [options]`` runs ``benchmarks/NAME.py``; without a name, lists the benchmarks."""

import ast
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "__main__", "harness", "paired_stats", "mutation_score"}  # the last: a test-quality job


def available() -> dict[str, str]:
    """Benchmark name -> the first line of its docstring."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem not in NOT_BENCHMARKS:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            found[path.stem] = doc.splitlines()[0] if doc else ""
    return found


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m benchmarks NAME [options]   (NAME --help for its options)\n")
        width = max(map(len, names))
        print("\n".join(f"  {name:<{width}}  {line}" for name, line in names.items()))
        return 0
    if argv[0] not in names:
        print(f"no benchmark {argv[0]!r}; one of: {', '.join(names)}", file=sys.stderr)
        return 2
    sys.argv = [str(HERE / f"{argv[0]}.py"), *argv[1:]]
    runpy.run_module(f"benchmarks.{argv[0]}", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
