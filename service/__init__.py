"""genserve online: store -> engine -> protocols. Never imports `training`."""
