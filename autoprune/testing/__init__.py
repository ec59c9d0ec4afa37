"""Test suites shipped with autoprune so extensions are held to the same contract as the built-ins."""
