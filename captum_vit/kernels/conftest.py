"""Keep ``pytest --doctest-modules`` from importing the ``@triton.jit`` modules: Triton is an
optional extra, and importing them would also decorate the kernels before a test session could
set ``TRITON_INTERPRET=1`` (tests/kernels/conftest.py)."""

collect_ignore_glob = ["_triton_*.py"]
