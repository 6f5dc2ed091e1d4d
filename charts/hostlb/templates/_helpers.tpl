{{/* The prefix of every name: the release's, with "hostlb" added unless it is in it already. */}}
{{- define "hostlb.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hostlb.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
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

{{/* REPOSITORY:TAG of image.controller or image.lb; the tag defaults to the appVersion. */}}
{{- define "hostlb.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "hostlb.leaseName" -}}
{{- .Values.settings.leaseName | default (printf "%s-controller" (include "hostlb.fullname" .)) -}}
{{- end -}}

{{/* The proxy pods' default PriorityClass: the one the chart makes, unless settings name another. */}}
{{- define "hostlb.proxyPriorityClass" -}}
{{- .Values.settings.defaultPriorityClass | default (printf "%s-proxy" (include "hostlb.fullname" .)) -}}
{{- end -}}

{{/* The ServiceAccount of the node agents: the controller names it so. */}}
{{- define "hostlb.agentServiceAccount" -}}
hostlb-agent
{{- end -}}

{{/* The ServiceAccount of every proxy pod: the controller names it so. */}}
{{- define "hostlb.proxyServiceAccount" -}}
hostlb-proxy
{{- end -}}
