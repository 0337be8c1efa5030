// catalog: implementation in progress
