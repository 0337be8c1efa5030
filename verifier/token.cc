// token: implementation in progress
