"""The AWS control plane: saved configuration, setup/teardown, image, cost, logs.

Every boto3 call of the control plane goes through ``aws.clients.AwsClients``; the
core never imports boto3.
"""
