{{/* The chart's name, or nameOverride: the app.kubernetes.io/name label, and part of the prefix. */}}
{{- define "hostlb.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
  The prefix of every name: fullnameOverride when set; else the release's name, with the chart's
  name (or nameOverride) added unless it is in it already. At most 40 characters, so that the
  longest suffix the chart adds still makes a valid name.
*/}}
{{- define "hostlb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "hostlb.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The namespace of every namespaced object and every RBAC subject: namespaceOverride, else the release's. */}}
{{- define "hostlb.namespace" -}}
{{- .Values.namespaceOverride | default .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
  The metadata.namespace line of a namespaced object (a newline, then indented under a top-level
  metadata), rendered only with namespaceOverride: without it the objects name no namespace and
  Helm puts them in the release's. Used as `{{- include "hostlb.metadataNamespace" . }}`.
*/}}
{{- define "hostlb.metadataNamespace" -}}
{{- with .Values.namespaceOverride }}{{ printf "\n  namespace: %s" (include "hostlb.namespace" $) }}{{ end -}}
{{- end -}}

{{- define "hostlb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hostlb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Standard labels; the component comes from the caller: (dict "root" $ "component" "controller"). */}}
{{- define "hostlb.labels" -}}
{{ include "hostlb.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: hostlb
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "hostlb.controllerSelectorLabels" -}}
{{ include "hostlb.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{/*
  The reference of image.controller or image.lb: REPOSITORY@DIGEST when a digest is set, else
  REPOSITORY:TAG, the tag defaulting to the appVersion.
*/}}
{{- define "hostlb.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "hostlb.leaseName" -}}
{{- .Values.settings.leaseName | default (printf "%s-controller" (include "hostlb.fullname" .)) -}}
{{- end -}}

{{/* The proxy pods' default PriorityClass: the one the chart makes, unless settings name another. */}}
{{- define "hostlb.proxyPriorityClass" -}}
{{- .Values.settings.defaultPriorityClass | default (printf "%s-proxy" (include "hostlb.fullname" .)) -}}
{{- end -}}

{{/*
  The ServiceAccounts of the node agents and of the proxy pods are fixed names, not the release's:
  the controller binary itself writes them into the pods it creates, so neither fullnameOverride
  nor nameOverride may change them. Two releases therefore need two namespaces.
*/}}
{{/* The ServiceAccount of the node agents: the controller names it so. */}}
{{- define "hostlb.agentServiceAccount" -}}
hostlb-agent
{{- end -}}

{{/* The ServiceAccount of every proxy pod: the controller names it so. */}}
{{- define "hostlb.proxyServiceAccount" -}}
hostlb-proxy
{{- end -}}
