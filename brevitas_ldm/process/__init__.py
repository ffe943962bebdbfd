"""What runs the method but is not the method: the processes of a torch.distributed job (:mod:`.ranks`), torch's
thread count (:mod:`.threads`), Ctrl-C and SIGTERM (:mod:`.interruption`) and the job's progress bar
(:mod:`.job_progress`). Kept off the core floor so that the core stays the method's own vocabulary."""
