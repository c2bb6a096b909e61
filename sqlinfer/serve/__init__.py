"""`sqlinfer serve` (:mod:`.server`) and the DB-API client that talks to it (:mod:`.client`)."""
