"""python -m benchmarks.report"""

from benchmarks.report import main

raise SystemExit(main())
