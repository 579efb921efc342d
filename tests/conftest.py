"""Suite-wide test configuration."""

# Imported here, at collection, on purpose: otherwise hypothesis's pytest plugin imports it lazily in its
# terminal-summary hook, where CPython 3.11's compiler has crashed ("AST constructor recursion depth
# mismatch") while pytest's assertion rewriter compiled hypothesis's modules at that late point.
import hypothesis  # noqa: F401
