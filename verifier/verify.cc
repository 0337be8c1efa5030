// verify: implementation in progress
