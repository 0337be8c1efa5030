// records: implementation in progress
