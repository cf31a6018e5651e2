"""`cntrace daemon`: in-kernel counters per container, their slots, the
scrape-time collector, the settings and the HTTP endpoint."""
