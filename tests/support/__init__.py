"""Test harness: a real registry on loopback, a fault-injecting proxy, and the models the suite uses."""
