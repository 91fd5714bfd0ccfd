"""Target trial emulation of early high-efficacy therapy versus escalation on MS registry data (issue 17)."""
