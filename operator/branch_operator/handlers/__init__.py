"""kopf registrations, one module per resource; importing this package registers every handler.

kopf runs one object's handlers in the order they were registered, so the order of the imports
below is part of the design (and sorting must not touch it):

1. ``lifecycle``: login, start-up (builds the Runtime and primes what it knows), clean-up, probes,
   the /metrics listener.
2. ``branches``: the Branch catalog handler first, so that every later Branch handler finds the
   catalog already knowing the event; then policy-status facts, initialisation and merge triggers,
   admin requests, incidents, and the deletion handler (which adds kopf's finalizer).
3. ``policies``: the policy index, policy status, merge triggers on spec changes.
4. ``locks``: merge triggers for locks on a branch and on a target branch, then the lock lifecycle.
5. ``admission``: the validating webhook's handlers (kopf runs them per admission request, apart from
   the watch handlers above, so their place does not matter).

Handlers only translate a watch event into a call on the Runtime's controllers; they decide nothing.
"""

# ruff: noqa: I001  (registration order, see above)
from branch_operator.handlers import lifecycle
from branch_operator.handlers import branches
from branch_operator.handlers import policies
from branch_operator.handlers import locks
from branch_operator.handlers import admission

__all__ = ["admission", "branches", "lifecycle", "locks", "policies"]
