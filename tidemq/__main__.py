from __future__ import annotations

from tidemq.cli import main

raise SystemExit(main())
