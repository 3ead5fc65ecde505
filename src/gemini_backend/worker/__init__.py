"""Reply generation: the job, the claim, the provider call, the sweeper."""
