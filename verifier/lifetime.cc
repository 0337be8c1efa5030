// lifetime: implementation in progress
