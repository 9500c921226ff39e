"""The stations of the conveyor belt as plain functions, and the loops that drive them.

poll → store → ship → maintain (DESIGN §1). ``nixlog poll``/``publish``/``prune`` call these
functions once; the daemon's two loops call the very same functions forever.
"""

from __future__ import annotations

# ============================================================== station 1: poll (poll issue)

# ============================================================== station 2: store (warehouse)

# ============================================================== station 3: ship (shipping)

# ============================================================== station 4: maintain (warehouse)

# ============================================================== loops (daemon issue)
