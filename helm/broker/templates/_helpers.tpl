{{- define "broker.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "broker.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "broker.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "broker.tlsSecret" -}}
{{- if .Values.certManager.enabled -}}{{ include "broker.fullname" . }}-svid{{- else -}}{{ required "tls.existingSecret is required without cert-manager" .Values.tls.existingSecret }}{{- end -}}
{{- end -}}
