{{/* The release's full name, cut to the 63 characters a label value allows. */}}
{{- define "tether-hub.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tether-hub.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tether-hub.labels" -}}
{{ include "tether-hub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tether-hub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tether-hub.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tether-hub.configSecret" -}}
{{- default (printf "%s-config" (include "tether-hub.fullname" .)) .Values.config.existingSecret -}}
{{- end -}}

{{- define "tether-hub.claimName" -}}
{{- default (printf "%s-data" (include "tether-hub.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}
