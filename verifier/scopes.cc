// scopes: implementation in progress
