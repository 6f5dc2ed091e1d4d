{{/* The environment variable of each controller setting in values.yaml. */}}
{{- define "hostlb.settingEnvs" -}}
loadBalancerClass: HOSTLB_LOAD_BALANCER_CLASS
serveUnclassed: HOSTLB_SERVE_UNCLASSED
lbImagePullPolicy: HOSTLB_LB_IMAGE_PULL_POLICY
dataplane: HOSTLB_DATAPLANE
forwardingMode: HOSTLB_FORWARDING_MODE
addressType: HOSTLB_ADDRESS_TYPE
publish: HOSTLB_PUBLISH
maxNodes: HOSTLB_MAX_NODES
maxServicePorts: HOSTLB_MAX_SERVICE_PORTS
maxSourceRanges: HOSTLB_MAX_SOURCE_RANGES
defaultPriorityClass: HOSTLB_DEFAULT_PRIORITY_CLASS
allowedPriorityClasses: HOSTLB_ALLOWED_PRIORITY_CLASSES
allowedTolerationKeys: HOSTLB_ALLOWED_TOLERATION_KEYS
trustedNamespaces: HOSTLB_TRUSTED_NAMESPACES
deniedPorts: HOSTLB_DENIED_PORTS
allowedPorts: HOSTLB_ALLOWED_PORTS
nodePortRange: HOSTLB_NODE_PORT_RANGE
logFormat: HOSTLB_LOG_FORMAT
syncTimeoutSeconds: HOSTLB_SYNC_TIMEOUT_SECONDS
nodeLeaseGraceSeconds: HOSTLB_NODE_LEASE_GRACE_SECONDS
withdrawalPauseLimitSeconds: HOSTLB_WITHDRAWAL_PAUSE_LIMIT_SECONDS
agentReportExpirySeconds: HOSTLB_AGENT_REPORT_EXPIRY_SECONDS
trustNodeLabels: HOSTLB_TRUST_NODE_LABELS
nodePublicAddressRanges: HOSTLB_NODE_PUBLIC_ADDRESS_RANGES
nodePublicHostnameDomains: HOSTLB_NODE_PUBLIC_HOSTNAME_DOMAINS
leaseName: HOSTLB_LEASE_NAME
leaseDurationSeconds: HOSTLB_LEASE_DURATION_SECONDS
leaseRenewDeadlineSeconds: HOSTLB_LEASE_RENEW_DEADLINE_SECONDS
leaseRetryPeriodSeconds: HOSTLB_LEASE_RETRY_PERIOD_SECONDS
{{- end -}}

{{/*
  The controller's environment from values: the settings given, with the Lease, the proxy
  PriorityClass and the pull policy always set, since their defaults here are the chart's.
*/}}
{{- define "hostlb.settingsEnv" -}}
{{- $values := deepCopy .Values.settings -}}
{{- $_ := set $values "leaseName" (include "hostlb.leaseName" .) -}}
{{- $_ := set $values "defaultPriorityClass" (include "hostlb.proxyPriorityClass" .) -}}
{{- $_ := set $values "lbImagePullPolicy" ($values.lbImagePullPolicy | default .Values.image.pullPolicy) -}}
{{- range $key, $name := include "hostlb.settingEnvs" . | fromYaml }}
{{- $value := index $values $key }}
{{- if kindIs "slice" $value }}{{ $value = join "," $value }}{{ end }}
{{- if ne (toString $value) "" }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end -}}
