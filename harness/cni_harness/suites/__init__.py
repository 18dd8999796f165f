"""Running suites (pytest per suite, JUnit, reports) and the `Lab` they drive traffic with."""
