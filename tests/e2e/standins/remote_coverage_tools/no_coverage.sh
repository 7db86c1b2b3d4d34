#!/bin/sh
echo "remote_coverage_tools stand-in: coverage is not supported in this workspace" >&2
exit 1
