// keydb: implementation in progress
